DROP TABLE appointments_queue;
