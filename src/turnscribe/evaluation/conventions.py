"""The scoring conventions, apart from the scorers: the CLI shows them as defaults without importing
pyannote.metrics and meeteval (which `turnscribe transcribe` and `turnscribe bench` do not need)."""

COLLARS = (0.0, 0.25)
"""Seconds on either side of each reference boundary left unscored (NIST md-eval / dscore convention)."""
TCP_COLLAR = 5.0
"""tcpWER's collar: how far (s) a hypothesis word may sit from its reference word's time; meeteval's suggested 5 s."""
DEFAULT_NORMALIZER = "lower,rm(.?!,)"
"""meeteval text normalizer: the model writes case and punctuation, references often do not."""
