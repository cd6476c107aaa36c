"""Exception groups from trio nurseries, reduced to the one failure that matters.

trio wraps whatever fails inside a nursery in an ExceptionGroup (strict groups). A layer
download has one outcome, and its readers need that outcome's kind (corrupt, cache write,
upstream, swarm unavailable), not a group, so the adapters unwrap it here.
"""

from __future__ import annotations

import trio


def first_failure(group: BaseExceptionGroup) -> BaseException:
    """The exception that made a nursery fail (not the cancellations it caused).

    A group of nothing but cancellations is returned as it is, to propagate.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if leaves else group
