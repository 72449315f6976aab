"""`vidlstm encode-video`: folders of videos -> embedding files, resumable, in process or remote."""
