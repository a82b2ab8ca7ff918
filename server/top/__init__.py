"""``authpool top``: the pool live in a terminal (Textual). :mod:`.rows` turns accounts and activity
into cells (pure); :mod:`.app` is the screen and its keys."""
