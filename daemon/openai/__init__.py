"""OpenAI Chat Completions ⇄ Anthropic Messages translation."""
