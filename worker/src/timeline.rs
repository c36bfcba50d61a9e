//! Recordings joined end to end: MPEG-TS recordings split by a recorder and
//! concatenated, a stream saved across its discontinuities. Each part's
//! timestamps start over at the join, so the frames after it would land on times
//! already encoded. [`Timelines`] finds the joins from packets' decode times; the
//! probe counts them, `drake remux` puts the parts one after another, and the
//! source reader refuses a source that still has one.

/// A stream whose decode time goes back by more than this many seconds, for
/// [`PACKETS_BACK`] packets in a row, holds parts recorded apart and joined end to
/// end. A frame or two back is a muxer's rounding, and one packet far back is a
/// damaged timestamp, which the decoders drop.
pub const TIME_BACK_S: f64 = 1.0;
pub const PACKETS_BACK: u32 = 8;

/// Where each audio and video stream's decode times have got to, by stream index.
#[derive(Default)]
pub struct Timelines {
    lines: Vec<Option<Line>>,
}

#[derive(Clone, Copy)]
struct Line {
    latest: f64,
    /// How many packets in a row have been well behind `latest`, and the first's time.
    behind: u32,
    back_to: f64,
}

/// What a packet's decode time says of its stream's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen {
    /// On it, or the stream's first.
    Along,
    /// Well behind it: a damaged timestamp, or the start of a join.
    Behind,
    /// The [`PACKETS_BACK`]th packet in a row behind: a join, from `from` seconds
    /// back to `to`, where the first of them was. The stream's timeline starts
    /// over at the join.
    Joined { from: f64, to: f64 },
}

impl Timelines {
    /// Follows stream `stream`'s packet decoded at `t` seconds.
    pub fn see(&mut self, stream: usize, t: f64) -> Seen {
        if self.lines.len() <= stream {
            self.lines.resize(stream + 1, None);
        }
        let line = &mut self.lines[stream];
        match line {
            Some(l) if t < l.latest - TIME_BACK_S => {
                if l.behind == 0 {
                    l.back_to = t;
                }
                l.behind += 1;
                if l.behind < PACKETS_BACK {
                    return Seen::Behind;
                }
                let joined = Seen::Joined { from: l.latest, to: l.back_to };
                *l = Line { latest: t, behind: 0, back_to: t };
                joined
            }
            Some(l) => {
                (l.latest, l.behind) = (l.latest.max(t), 0);
                Seen::Along
            }
            None => {
                *line = Some(Line { latest: t, behind: 0, back_to: t });
                Seen::Along
            }
        }
    }

    /// Starts stream `stream`'s timeline over at `t`: another stream found the join
    /// this packet is after.
    pub fn restart(&mut self, stream: usize, t: f64) {
        if let Some(Some(l)) = self.lines.get_mut(stream) {
            *l = Line { latest: t, behind: 0, back_to: t };
        }
    }

    /// Forgets every stream's timeline (after a seek, which goes back by design).
    pub fn clear(&mut self) {
        self.lines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_is_eight_packets_in_a_row_well_behind() {
        let mut t = Timelines::default();
        for i in 0..100 {
            assert_eq!(t.see(0, f64::from(i) * 0.1), Seen::Along);
        }
        // One damaged timestamp, then back on the timeline.
        assert_eq!(t.see(0, 1.0), Seen::Behind);
        assert_eq!(t.see(0, 10.0), Seen::Along);
        // A little back (a muxer's rounding) is along.
        assert_eq!(t.see(0, 9.5), Seen::Along);
        // The second part starts over at 0.5 s.
        for i in 0..7 {
            assert_eq!(t.see(0, 0.5 + f64::from(i) * 0.1), Seen::Behind);
        }
        assert_eq!(t.see(0, 1.2), Seen::Joined { from: 10.0, to: 0.5 });
        assert_eq!(t.see(0, 1.3), Seen::Along);
        // Other streams keep their own timelines.
        assert_eq!(t.see(1, 0.0), Seen::Along);
    }
}
