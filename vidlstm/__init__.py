"""vidlstm: CNN + LSTM embeddings of video frames, served over gRPC for RL agents.

Subpackages: `vidlstm.models` (torch), `vidlstm.service` (the gRPC server),
`vidlstm.clients` (light clients: grpcio, protobuf, numpy), `vidlstm.v1` (generated stubs).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vidlstm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
