"""What workers share through Redis: limits and budgets, breaker signals, the channel."""
