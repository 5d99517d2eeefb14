"""`mcdrop score`: many inputs scored into Parquet, one row per input, in bounded memory and
resumable after a crash (pyarrow, the `score` extra; Ray Data for the Ray engine).

input_plan (the inputs listed once, read a batch of references at a time) and image_lists (Parquet
or CSV lists of image paths); job (the options and `Scorer`: references -> result rows, shared by
both engines); checkpoint (OUT.parts: the job's identity and finished parts, for --resume);
output (part files written and merged into the output, read_scores); local (the local engine,
score_local) and ray_engine (the Ray Data engine).
"""
