"""What a run writes: metric logs, the mining monitor, exports and reports."""
