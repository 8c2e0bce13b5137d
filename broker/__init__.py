"""The bus contract: message Structs, subjects, streams, config, logging, the embedded server.

Every other package imports this one; it imports none of them.
"""
