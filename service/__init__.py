"""vidlstm.service: the gRPC server (servicer, dynamic batcher, state pool, settings)."""

from .server import RunningServer, create_server, load_inference_model, serve
from .settings import ServerSettings

__all__ = ["RunningServer", "ServerSettings", "create_server", "load_inference_model", "serve"]
