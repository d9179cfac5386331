"""The Golem Task API wire protocol: the .proto, its generated modules, and fixed names.

Regenerate the modules with ``python scripts/gen_protocol.py`` after editing the .proto.
"""
