-- Storing a delivery is the request path's main cost, and every index is written on
-- every delivery: the index on random delivery ids alone cost about a fifth of it.
-- list_deliveries now orders by rowid (insertion order) and requeue_delivery looks
-- deliveries up through the (tracker, delivery_id) unique key, so both go.
DROP INDEX IF EXISTS deliveries_by_received;
DROP INDEX IF EXISTS deliveries_by_delivery_id;
