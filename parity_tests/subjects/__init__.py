"""Outside implementations judged by the parity suite through parity_tests/subject.py."""
