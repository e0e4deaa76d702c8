"""gRPC channel options shared by the shard servers and their client."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
SERVICE = "hoststore.EmbeddingStore"
# Metadata: the tag this client last set or loaded per table, as JSON; a shard refuses the
# client's calls once a table holds another tag (see ``StoreServicer._fenced``).
FENCE_HEADER = "x-hoststore-fences"


def grpc_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes)]  # fmt: skip
