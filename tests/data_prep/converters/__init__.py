"""Tests of data_prep.converters."""
