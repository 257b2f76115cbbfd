"""Item (and user) text through a pretrained language model: the encoder (``encoder``), encoding a catalogue's text
as batch inference on Ray with a cache (``encode``), and the vectors as model features (``features``)."""
