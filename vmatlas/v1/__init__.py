"""Generated from protos/vmatlas/v1 by tools/genproto; do not edit."""
