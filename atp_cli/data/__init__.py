"""Image-question-answer data with exact ground truth, generated (no data set can be downloaded)."""
