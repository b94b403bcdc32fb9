"""loopline's Feast objects, declared top-down: project, entity, source, feature view, feature service.

Where the data lives: every path here is *relative*. Feast resolves relative
FileSource paths (and the registry and SQLite paths of feature_store.yaml)
against the repo path the store is opened with, so
`services.common.features.open_store(state_dir)` opens the store with
repo_path=state_dir and every deployment reads and writes its own
`<state_dir>/data/*.parquet`. Nothing here depends on where this file sits or on
environment variables, and the registry holds the same definitions for every
deployment. (The alternatives were worse: an environment variable read here is
fixed at first import, so one process could not open two state folders, e.g. in
tests; a rendered copy of the repo per state folder duplicates the definitions.)

The data: `data/users.parquet`, the generator's user table (`models.traffic`) or
the user's own, one row per profile version, stamped `event_timestamp` (valid
from) and `created`.

Earlier definitions also had `user_stats_fv` (per-user correction counts pushed
by the feedback service; measured to help no stream, bench/user_stats.py, and
removed). `apply` does not delete, so a registry from then still lists it;
nothing reads it, since reads go through `user_features`.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, Project, ValueType
from feast.types import Float64, String

project = Project(name="loopline", description="Per-user features for the intent router")

# value_type is optional today but Feast warns that it will become mandatory.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A person talking to the phone assistant")

user_source = FileSource(
    name="user_source",
    path="data/users.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="User profiles from the traffic generator or the user's own table",
)

# Profiles change rarely; one older than two years is treated as unknown.
user_profile_fv = FeatureView(
    name="user_profile_fv",
    entities=[user],
    ttl=timedelta(days=730),
    schema=[
        Field(name="locale", dtype=String),
        Field(name="device", dtype=String),
        Field(name="fav_app_1", dtype=String),
        Field(name="fav_app_2", dtype=String),
        Field(name="fav_app_3", dtype=String),
        Field(name="activity_level", dtype=Float64, description="Relative events per day (mean about 1.4)"),
        Field(name="activity_tier", dtype=String, description="low, medium or high"),
        Field(name="top_intent", dtype=String, description="The intent the user asks for most"),
    ],
    online=True,
    source=user_source,
)

user_features = FeatureService(
    name="user_features",
    features=[user_profile_fv],
    description="What serving and the train flow read per user for the featurizer",
)
