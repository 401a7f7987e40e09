"""Video decoding, sampling, preprocessing, annotation formats and data sets shared by training and serving."""
