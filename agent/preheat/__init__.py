"""`pollen preheat`: warm the roots' caches with an image's blobs before a rollout.

- images:    image names, manifests and platforms: which blobs a pull will read (pure)
- auth:      registry challenges, bearer tokens and credential files (pure)
- progress:  each blob's state, the terminal frame, log lines, summary, JSON document (pure)
- manifests: reading manifests from the registry, answering its auth (trio)
- warm:      asking each blob's owning root to fetch it, and following it (trio)
- command:   the command line, and the run that ties them together
"""
