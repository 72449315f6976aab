"""vidlstm.service: the gRPC server (servicer, dynamic batcher, state pool, settings)."""

from .server import RunningServer, create_server, serve
from .settings import ServerSettings

__all__ = ["RunningServer", "ServerSettings", "create_server", "serve"]
