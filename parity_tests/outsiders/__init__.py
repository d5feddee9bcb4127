"""Two outside GFocalV2 implementations (PyTorch, Jittor) with plantable one-line bugs: the parity suite's proof that it locates bugs in code it does not own."""
