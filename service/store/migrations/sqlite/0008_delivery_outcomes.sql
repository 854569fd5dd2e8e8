-- What each delivery led to (issue 17): the outcome its job ended with (created,
-- existing, same_request, failed, gave_up, ...), shown by `deliveries list`.
ALTER TABLE jobs ADD COLUMN outcome TEXT;
