"""A new user's commands: clear refusals, summaries and a --no-wait round trip."""
