"""Video and image I/O of hirn, without the model: decoding (any container FFmpeg reads, image
folders, YUV4MPEG2 pipes), encoding with the input's timing, colour, bit depth and other
streams, and the FrameSource / FrameSink interface the runtime reads and writes through.
Imports nothing from hirn.runtime, hirn.export or hirn.train."""
