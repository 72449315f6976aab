"""vidlstm.tools: the commands on top of everything (encode-video, import); `vidlstm.cli` runs them."""
