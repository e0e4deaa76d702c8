"""gRPC channel options shared by the shard servers and their client."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
SERVICE = "hoststore.EmbeddingStore"


def grpc_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes)]  # fmt: skip
