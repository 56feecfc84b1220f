-- The built-in default, as a script: publish the S3 record as JSON to the topic's subject.
-- lunafs does exactly this (in Rust) for a bucket without a notification script; install
-- this file as a starting point for your own:
--   lunafs notification script BUCKET lua/notify/default.lua
nats.publish(topic.subject, event_json)
