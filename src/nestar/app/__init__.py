"""The local web demo (`nestar serve`) and the headless-browser driver its test uses."""
