"""A reproducible DVC pipeline that trains LSTM models on IMDB movie reviews."""
