"""Every statistic a LeRobot dataset stores, in one place.

`summary`: exact, mergeable statistics (pooled moments, min/max, quantiles) and their reduce. `columns`: how
per-episode stats are stored (`stats/<feature>/<stat>` list columns). `per_episode`: the stats the write
tasks compute for each episode (data frames, decoded video frames) and their scratch files. `images`: the
stats of embedded images, from every decoded image. `relative`: LeRobot's relative-action stats. `chunks`: the
driver's reading back of an output's per-episode stats, a chunk of episodes at a time, with the sources'
stored camera stats.
"""
