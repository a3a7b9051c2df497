"""Tests of the local API emulators."""
