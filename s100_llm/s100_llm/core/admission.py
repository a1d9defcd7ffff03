"""Admission of chat goals: how many run at once, and what a goal arriving when all run gets.

Policies (parameter `concurrency`):
  reject   a goal arriving while `slots` goals run or wait is refused;
  queue    it waits its turn, first come first served, up to `max_queued` waiting goals;
  preempt  it is admitted and the oldest goal still running or waiting is preempted to make
           room (a running one is canceled and frees its slot when it ends; a waiting one
           leaves the queue at once).
`slots` is the server's OLLAMA_NUM_PARALLEL, so that every goal that runs is generating on
the server rather than waiting in Ollama's own queue, where it could not be seen or bounded.

Admission only keeps the books: it never blocks and never calls back. Each method says what
the caller must do (start these goals, end that one), so the caller acts outside the lock and
no thread waits for a turn.
"""

import collections
import dataclasses
import threading
from typing import Deque, Generic, List, Optional, TypeVar

Goal = TypeVar('Goal')


@dataclasses.dataclass
class Arrival(Generic[Goal]):
    """What admit() decided for a new goal."""

    start: bool = False                 # it may run now (it holds a slot)
    refusal: str = ''                   # why there is no room for it ('' when admitted)
    preempted: Optional[Goal] = None    # preempt: the goal that must make room for it
    preempted_was_waiting: bool = False  # ... and it left the queue (end it now, unrun)


class Admission(Generic[Goal]):
    def __init__(self, policy: str, slots: int, max_queued: int) -> None:
        self.policy = policy
        self.slots = slots
        self.max_queued = max_queued
        self._running: List[Goal] = []              # hold a slot, in start order
        self._waiting: Deque[Goal] = collections.deque()   # in arrival order
        self._preempted: List[Goal] = []            # running goals already told to make room
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def admit(self, goal: Goal) -> Arrival[Goal]:
        """Take a new goal: start it, queue it (after preempting another) or refuse it."""
        with self._lock:
            busy = len(self._running) + len(self._waiting)
            if busy < self.slots:
                self._running.append(goal)
                return Arrival(start=True)
            if self.policy == 'reject':
                return Arrival(refusal=f'busy: {busy} chat(s) in progress and concurrency is '
                                       "'reject'; retry when it ends")
            if self.policy == 'preempt':
                return self._preempt_for(goal)
            if len(self._waiting) >= self.max_queued:
                return Arrival(refusal=f'queue full: {len(self._waiting)} chat(s) already '
                                       f'waiting (max_queued_goals {self.max_queued})')
            self._waiting.append(goal)
            return Arrival()

    def _preempt_for(self, goal: Goal) -> Arrival[Goal]:
        arrival: Arrival[Goal] = Arrival()
        victim = next((g for g in self._running if g not in self._preempted), None)
        if victim is not None:
            self._preempted.append(victim)
        elif self._waiting:
            victim = self._waiting.popleft()
            arrival.preempted_was_waiting = True
        arrival.preempted = victim
        self._waiting.append(goal)
        return arrival

    def withdraw(self, goal: Goal) -> bool:
        """Take a waiting goal out of the queue (it was canceled); False if it was not waiting."""
        with self._lock:
            if goal not in self._waiting:
                return False
            self._waiting.remove(goal)
            return True

    def withdraw_all(self) -> List[Goal]:
        """Empty the queue (the node stopped serving); the goals that were waiting."""
        with self._lock:
            goals = list(self._waiting)
            self._waiting.clear()
            return goals

    def release(self, goal: Goal) -> List[Goal]:
        """The goal ended: free its slot; the waiting goals that start now (in order)."""
        with self._lock:
            if goal in self._running:
                self._running.remove(goal)
            if goal in self._preempted:
                self._preempted.remove(goal)
            starting = []
            while self._waiting and len(self._running) < self.slots:
                starting.append(self._waiting.popleft())
                self._running.append(starting[-1])
            return starting
