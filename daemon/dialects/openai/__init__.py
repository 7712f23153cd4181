"""The OpenAI Chat Completions dialect: request, response and stream translators, its error
shape, the signed-thinking cache for tool loops, and its sink."""
