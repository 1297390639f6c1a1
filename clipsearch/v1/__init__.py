"""Generated gRPC code for clipsearch.v1: do not edit; run scripts/gen_protos.py."""
