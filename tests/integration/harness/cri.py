"""The CRI ImageService over grpc, with hand-encoded protobuf messages.

`crictl` is not packaged in Debian 12, and generated stubs would pin a CRI proto
version; the few messages we need are small enough to encode by hand (varints and
length-delimited fields). grpcio carries raw bytes when given no (de)serializers.

Messages used (field numbers from k8s.io/cri-api `api.proto`, same in v1 and v1alpha2):
    ImageSpec          { string image = 1; map<string,string> annotations = 2; }
    AuthConfig         { string username = 1; string password = 2; string auth = 3;
                         string server_address = 4; string identity_token = 5;
                         string registry_token = 6; }
    PullImageRequest   { ImageSpec image = 1; AuthConfig auth = 2;
                         PodSandboxConfig sandbox_config = 3; }
    PullImageResponse  { string image_ref = 1; }
    RemoveImageRequest { ImageSpec image = 1; }
    ListImagesRequest  { ImageFilter filter = 1; }
    ListImagesResponse { repeated Image images = 1; }
    Image              { string id = 1; repeated string repo_tags = 2;
                         repeated string repo_digests = 3; uint64 size = 4; ... }
    VersionRequest     { string version = 1; }
    VersionResponse    { string version = 1; string runtime_name = 2;
                         string runtime_version = 3; string runtime_api_version = 4; }
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

API_VERSIONS = ("runtime.v1", "runtime.v1alpha2")

# -- protobuf wire format (just enough) ---------------------------------------------------


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_bytes_field(field_number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return encode_varint((field_number << 3) | 2) + encode_varint(len(data)) + data


def encode_str(field_number: int, s: str | None) -> bytes:
    """Empty/None strings are omitted, as proto3 does."""
    return encode_bytes_field(field_number, s.encode()) if s else b""


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint too long")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field_number, wire_type, value) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = decode_varint(buf, pos)
            yield field_number, wire_type, value
        elif wire_type == 2:
            length, pos = decode_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            yield field_number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type == 1:
            yield field_number, wire_type, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            yield field_number, wire_type, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def string_fields(buf: bytes, field_number: int) -> list[str]:
    return [
        v.decode()
        for f, wt, v in iter_fields(buf)
        if f == field_number and wt == 2 and isinstance(v, bytes)
    ]


# -- messages ------------------------------------------------------------------------------


def image_spec(image: str) -> bytes:
    return encode_str(1, image)


def pull_image_request(image: str, auth: tuple[str, str] | None = None) -> bytes:
    msg = encode_bytes_field(1, image_spec(image))
    if auth is not None:
        msg += encode_bytes_field(2, encode_str(1, auth[0]) + encode_str(2, auth[1]))
    return msg


@dataclass(frozen=True)
class CriImage:
    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int


def decode_list_images(buf: bytes) -> list[CriImage]:
    images = []
    for f, wt, v in iter_fields(buf):
        if f == 1 and wt == 2 and isinstance(v, bytes):
            size = next((int(x) for ff, w, x in iter_fields(v) if ff == 4 and w == 0), 0)
            images.append(
                CriImage(
                    id=(string_fields(v, 1) or [""])[0],
                    repo_tags=tuple(string_fields(v, 2)),
                    repo_digests=tuple(string_fields(v, 3)),
                    size=size,
                )
            )
    return images


# -- client --------------------------------------------------------------------------------


class CriClient:
    """Raw-bytes grpc calls to a CRI endpoint on a unix socket.

    Tries `runtime.v1` first and falls back to `runtime.v1alpha2` on UNIMPLEMENTED
    (containerd 1.6 serves both; older ones only the latter).
    """

    def __init__(self, socket_path: Path) -> None:
        import grpc  # imported here so the rest of the harness works without grpcio

        self._grpc = grpc
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}",
            options=[("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 << 20)],
        )
        self._api: str | None = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, service: str, method: str, request: bytes, *, timeout: float) -> bytes:
        """Call `/<api>.<service>/<method>` with raw protobuf bytes; return raw bytes."""
        grpc = self._grpc
        apis = [self._api] if self._api else list(API_VERSIONS)
        last: Exception | None = None
        for api in apis:
            rpc = self._channel.unary_unary(f"/{api}.{service}/{method}")
            try:
                resp = rpc(request, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    last = e
                    continue
                raise
            self._api = api
            return resp
        assert last is not None
        raise last

    def version(self, *, timeout: float = 5.0) -> str:
        """runtime_name/runtime_version: cheap proof that the CRI service answers."""
        resp = self.call("RuntimeService", "Version", encode_str(1, "v1"), timeout=timeout)
        name = (string_fields(resp, 2) or [""])[0]
        ver = (string_fields(resp, 3) or [""])[0]
        return f"{name}/{ver}"

    def pull_image(
        self, image: str, auth: tuple[str, str] | None = None, *, timeout: float = 120.0
    ) -> str:
        """PullImage; returns the response's image_ref (containerd: the image id)."""
        resp = self.call(
            "ImageService", "PullImage", pull_image_request(image, auth), timeout=timeout
        )
        return (string_fields(resp, 1) or [""])[0]

    def remove_image(self, image: str, *, timeout: float = 30.0) -> None:
        self.call(
            "ImageService", "RemoveImage", encode_bytes_field(1, image_spec(image)), timeout=timeout
        )

    def list_images(self, *, timeout: float = 30.0) -> list[CriImage]:
        return decode_list_images(self.call("ImageService", "ListImages", b"", timeout=timeout))
