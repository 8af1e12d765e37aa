"""Images: safe decoding (size, bombs, EXIF orientation) and the model's input tensor (letterbox, centre crop);
nothing here knows about the database."""
