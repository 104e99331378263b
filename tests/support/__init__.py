"""What the tests share beside their fixtures: servers and helpers that production never imports."""
