"""The HTTP edge: request bodies, credentials, rate limits, dependencies, response schemas.

Everything here deals with what a client sends before it reaches inference: it is where
untrusted bytes are bounded, parsed (by well-kept parsers) and refused with a JSON error.
"""
