"""Tests of the Marketo emulator, through real server processes."""
