"""``python -m hoststore.server``: starts one shard server (see :mod:`hoststore.rpc.server`)."""

from hoststore.rpc.server import main

if __name__ == "__main__":
    main()
