CREATE TABLE appointments_queue (id INTEGER PRIMARY KEY, department TEXT NOT NULL, slot TEXT NOT NULL);
