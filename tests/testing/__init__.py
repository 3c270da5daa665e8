"""Tests of ferryman.testing, the fake provider servers."""
