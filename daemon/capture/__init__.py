"""Packet sources. Each yields frames with their link type; none parses IP."""
