//! The topic registry: each topic's run function, in report order. The report iterates
//! this list; adding a topic is its module, a [`Topic`] variant (name, title,
//! question) and one line here.
use crate::data::{TheoryConfig, TheoryData};
use crate::error::Result;
use crate::result::TopicResult;
use crate::Topic;

/// Computes a topic's result on loaded data (no plots).
pub type RunFn = fn(&TheoryData, &TheoryConfig) -> Result<Box<dyn TopicResult>>;

/// One registered topic.
#[derive(Clone, Copy)]
pub struct Entry {
    pub topic: Topic,
    pub run: RunFn,
}

/// Boxes a topic's typed `run` into a [`RunFn`].
macro_rules! register {
    ($topic:expr, $module:ident) => {
        Entry {
            topic: $topic,
            run: |data, cfg| Ok(Box::new(crate::$module::run(data, cfg)?)),
        }
    };
}

/// Every topic, in report order.
pub const TOPICS: [Entry; 7] = [
    register!(Topic::CeVsMse, ce_vs_mse),
    register!(Topic::DeepLinear, deep_linear),
    register!(Topic::Backprop, backprop),
    register!(Topic::CrossEntropy, cross_entropy),
    register!(Topic::Softmax, softmax),
    register!(Topic::L2Gradient, l2_gradient),
    register!(Topic::Minibatch, minibatch),
];

/// The registered entry of `topic`.
pub fn entry(topic: Topic) -> &'static Entry {
    TOPICS
        .iter()
        .find(|e| e.topic == topic)
        .expect("every Topic variant is registered (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_registered_once_in_report_order() {
        let registered: Vec<Topic> = TOPICS.iter().map(|e| e.topic).collect();
        assert_eq!(registered, Topic::ALL.to_vec());
    }
}
