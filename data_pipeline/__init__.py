"""Everything that turns files into token batches. Never imports the model."""
