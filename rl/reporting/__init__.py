"""What a run shows while and after it trains: the console progress bar and summary (``rl.reporting.progress``),
metrics sent to experiment trackers (``rl.reporting.trackers``) and training-curve PNGs (``rl.reporting.plots``)."""
