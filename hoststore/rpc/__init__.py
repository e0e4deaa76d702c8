"""The network layer: shard servers (``python -m hoststore.server``), the client that
implements the store interface over them, and local launchers for tests and scripts.

Importing this package imports gRPC; the rest of hoststore does not.
"""

from hoststore.rpc.client import ShardedStore
from hoststore.rpc.launch import LocalCluster, free_port, wait_serving
from hoststore.rpc.server import StoreServicer, serve

__all__ = ["LocalCluster", "ShardedStore", "StoreServicer", "free_port", "serve", "wait_serving"]
