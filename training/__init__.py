"""Training and evaluation of clipsearch models (`python -m training ...`)."""
