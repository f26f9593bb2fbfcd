"""`atp bench`: accuracy, speed and memory of strategies x budgets, side by side with stock llama.cpp."""
