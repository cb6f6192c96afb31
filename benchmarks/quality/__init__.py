"""The learning-curve benchmark (``make bench-quality``): our ``train`` defaults against a
plain 30-line training loop, on small real-image datasets that install offline."""
